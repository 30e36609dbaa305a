"""DeepSpeed's pipeline topology and megatron-core's groups put every rank in the same place."""

import pytest
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology
from megatron.core.parallel_state import RankGenerator

SHAPES = [(2, 2, 2), (2, 1, 2), (1, 2, 2), (4, 2, 1), (2, 4, 2), (8, 2, 4), (1, 1, 8)]


def megatron_coords(tp, pp, dp):
    gen = RankGenerator(tp=tp, ep=1, dp=dp, pp=pp, cp=1, order="tp-cp-ep-dp-pp")
    coords = {}
    for axis in ("tp", "pp", "dp"):
        for group in gen.get_ranks(axis):
            for position, rank in enumerate(group):
                coords.setdefault(rank, {})[axis] = position
    return coords


@pytest.mark.parametrize("tp,pp,dp", SHAPES)
def test_rank_maps_agree(tp, pp, dp):
    topo = PipeModelDataParallelTopology(num_pp=pp, num_mp=tp, num_dp=dp)
    mega = megatron_coords(tp, pp, dp)
    assert len(mega) == topo.world_size() == tp * pp * dp
    for rank in range(tp * pp * dp):
        coord = topo.get_coord(rank)
        assert (coord.model, coord.pipe, coord.data) == (mega[rank]["tp"], mega[rank]["pp"], mega[rank]["dp"]), rank


@pytest.mark.parametrize("tp,pp,dp", SHAPES)
def test_groups_agree(tp, pp, dp):
    topo = PipeModelDataParallelTopology(num_pp=pp, num_mp=tp, num_dp=dp)
    gen = RankGenerator(tp=tp, ep=1, dp=dp, pp=pp, cp=1, order="tp-cp-ep-dp-pp")
    for ds_axis, mega_axis in (("model", "tp"), ("pipe", "pp"), ("data", "dp")):
        ds_groups = sorted(sorted(g) for g in topo.get_axis_comm_lists(ds_axis))
        assert ds_groups == sorted(sorted(g) for g in gen.get_ranks(mega_axis)), ds_axis
