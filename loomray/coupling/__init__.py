"""The LOOM-CFM coupling core: seeds table, noise, assignment, couplings."""

from loomray.coupling.couplings import (
    KINDS,
    Coupling,
    CouplingStats,
    IndependentCoupling,
    LoomCoupling,
    MinibatchOTCoupling,
    flip_rows,
    global_ot_cost,
    make_coupling,
    split_rows,
    step_rng,
    table_cost,
)
from loomray.coupling.noise import noise_from_seeds
from loomray.coupling.ot import assignment_from_cost, cost_matrix, pair_costs, solve_assignment
from loomray.coupling.table import AssignmentTable, multiset_fingerprint

__all__ = [
    "KINDS",
    "AssignmentTable",
    "Coupling",
    "CouplingStats",
    "IndependentCoupling",
    "LoomCoupling",
    "MinibatchOTCoupling",
    "assignment_from_cost",
    "cost_matrix",
    "flip_rows",
    "global_ot_cost",
    "make_coupling",
    "multiset_fingerprint",
    "noise_from_seeds",
    "pair_costs",
    "solve_assignment",
    "split_rows",
    "step_rng",
    "table_cost",
]
