"""dnnunet ensemble"""


def add_arguments(p):
    from diffusion_nnunet.cli.common import positive_int

    p.add_argument("-i", "--inputs", nargs="+", required=True,
                   help="prediction folders written with --save-probabilities")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("-w", "--weights", nargs="+", type=float, default=None, help="one weight per folder (default equal)")
    p.add_argument("--save-probabilities", action="store_true", help="also write the averaged probabilities")
    p.add_argument("-np", "--num-processes", type=positive_int, default=1, help="worker processes")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an output folder that holds an earlier run's results, whole (without it such a "
                        "folder is refused)")


def run(args):
    from diffusion_nnunet.ensemble import ensemble_folders

    cases = ensemble_folders(args.inputs, args.output, args.weights, args.save_probabilities, args.num_processes,
                             overwrite=args.overwrite)
    print(f"{len(cases)} cases written to {args.output}")
    return 0
