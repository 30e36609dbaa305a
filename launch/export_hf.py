"""Export a checkpoint (any layout) to a Hugging Face folder; the same as `bigtrain-export`.

python launch/export_hf.py outputs/<run> hf_out/     # or .../checkpoints/step_00001000
"""

from bigtrain.entry.cli import export

if __name__ == "__main__":
    export()
