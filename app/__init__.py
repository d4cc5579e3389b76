"""The Speedlab workbench: ``python -m app`` (Gradio; app/ui.py layout, app/callbacks.py handlers)."""
