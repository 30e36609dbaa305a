"""Predict memory per rank and step time for every layout of a cluster, before submitting a job:

    python launch/plan.py model=llama_7b cluster.nodes=4 cluster.gpus_per_node=8 cluster.gpu_memory_gb=80

The same as the installed `bigtrain-plan`. Other overrides are the training command's
(precision, trainer.micro_batch_size, trainer.global_batch_size, model.seq_len, ...). See
bigtrain/parallel/plan.py for the model behind the figures.
"""

from bigtrain.entry.cli import plan

if __name__ == "__main__":
    plan()
