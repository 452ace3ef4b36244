"""DPO's own flags, in a module that imports neither torch nor megatron, so that ``--help`` answers at once
(``training/help.py``); ``DPOTask.add_arguments`` adds the same."""

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "rpo", "simpo")


def add_arguments(parser) -> None:
    g = parser.add_argument_group("DPO")
    g.add_argument("--loss-type", choices=LOSS_TYPES, default="sigmoid",
                   help="sigmoid (DPO), ipo, hinge, rpo (DPO + rpo-alpha x chosen NLL), simpo (reference-free)")
    g.add_argument("--beta", type=float, default=0.1, help="inverse temperature of the implicit reward")
    g.add_argument("--label-smoothing", type=float, default=0.0, help="cDPO epsilon (sigmoid, rpo)")
    g.add_argument("--rpo-alpha", type=float, default=1.0, help="weight of the chosen NLL (rpo)")
    g.add_argument("--simpo-gamma", type=float, default=0.5, help="target reward margin (simpo)")
    g.add_argument("--reference", choices=("online", "precomputed"), default="online",
                   help="online: frozen reference model; precomputed: log-probs from dpo.score_reference")
    g.add_argument("--ref-load", default=None, help="reference checkpoint (default: --pretrained-checkpoint)")
