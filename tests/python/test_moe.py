"""ferry.nn.MoE trains under `ferry launch` (2 nodes x 2, no namespaces needed) exactly as the single-process
torch reference does: losses, gradients and parameters at every step (moe_worker.py)."""

from conftest import run_ferry_launch
from test_deepep import require_all_ranks


def test_moe_layer_trains_like_the_reference_under_ferry_launch():
    result = run_ferry_launch("moe_worker.py", nodes=2, ranks_per_node=2)
    require_all_ranks(result, 4)
    assert result.lines("step 3: loss"), result.describe()
