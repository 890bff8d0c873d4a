"""ferry.nn.MoE trains under `ferry launch` (2 nodes x 2, no namespaces needed; on CUDA one node, one rank per
GPU) exactly as the single-process torch reference does: losses, gradients and parameters at every step
(moe_worker.py)."""

from conftest import DEVICE, cuda_ranks, run_ferry_launch
from test_deepep import require_all_ranks


def test_moe_layer_trains_like_the_reference_under_ferry_launch():
    nodes, per_node = (1, cuda_ranks()) if DEVICE == "cuda" else (2, 2)
    result = run_ferry_launch("moe_worker.py", nodes=nodes, ranks_per_node=per_node)
    require_all_ranks(result, nodes * per_node)
    assert result.lines("step 3: loss"), result.describe()
