"""Raw corpora → tokenizer → megatron-core .bin/.idx; the same as `bigtrain-prepare`.

python launch/prepare_data.py inputs=[corpus/] output=data/corpus tokenizer.kind=bpe tokenizer.vocab_size=32000
"""

from bigtrain.entry.cli import prepare

if __name__ == "__main__":
    prepare()
