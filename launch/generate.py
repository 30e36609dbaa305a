"""Sample text from a checkpoint (any layout); the same as `bigtrain-generate`.

python launch/generate.py outputs/<run> --prompt "ROMEO:" --max-tokens 200 --temperature 0.8 --top-k 50
"""

from bigtrain.entry.cli import generate

if __name__ == "__main__":
    generate()
