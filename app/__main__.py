"""The Speedlab workbench (python -m app). The Gradio UI lands with the workbench issue."""

print("Speedlab workbench: coming soon. Meanwhile: python -m backend --help")
