"""dnnunet evaluate"""


def add_arguments(p):
    from diffusion_nnunet.cli.common import positive_int

    p.add_argument("-ref", "--reference", required=True, help="folder of reference label maps")
    p.add_argument("-pred", "--prediction", required=True, help="folder of predicted label maps")
    p.add_argument("-djfile", "--dataset-json", default=None,
                   help="dataset.json for label names and file ending (default: the prediction folder's)")
    p.add_argument("-o", "--output", default=None, help="JSON output (default: PRED/evaluation.json)")
    p.add_argument("--nsd-tolerance", type=float, default=1.0, help="NSD tolerance in mm (default 1)")
    p.add_argument("--allow-missing", action="store_true",
                   help="evaluate the cases that have a prediction when some references have none (logged)")
    p.add_argument("-np", "--num-processes", type=positive_int, default=1, help="worker processes")
    p.add_argument("--calibration", action="store_true",
                   help="also the expected calibration error of the saved probabilities (PRED/CASE.npz), per class "
                        "and overall, and a reliability diagram: PRED/calibration.json and PRED/reliability.png")
    p.add_argument("--calibration-ensemble", nargs="+", default=None, metavar="FOLDER",
                   help="with --calibration: average the probabilities of these further prediction folders with "
                        "PRED's first (e.g. nnU-Net's folds predicted one by one)")
    p.add_argument("--calibration-bins", type=int, default=15, help="confidence bins of the ECE (default 15)")


def run(args):
    from pathlib import Path

    from diffusion_nnunet.evaluation import evaluate_folders, format_table, write_evaluation

    dataset_json = args.dataset_json
    if dataset_json is None and (Path(args.prediction) / "dataset.json").is_file():
        dataset_json = Path(args.prediction) / "dataset.json"
    result = evaluate_folders(args.reference, args.prediction, dataset_json=dataset_json,
                              nsd_tolerance_mm=args.nsd_tolerance, num_processes=args.num_processes,
                              allow_missing=args.allow_missing)
    output = Path(args.output) if args.output else Path(args.prediction) / "evaluation.json"
    write_evaluation(result, output)
    print(format_table(result))
    print(f"written: {output}")
    if args.calibration:
        from diffusion_nnunet.calibration import calibration_summary, run_calibration

        calibration = run_calibration(args.reference, [args.prediction] + (args.calibration_ensemble or []),
                                      dataset_json, output.parent, args.calibration_bins)
        print(calibration_summary(calibration))
        print(f"written: {output.parent / 'calibration.json'}, {output.parent / 'reliability.png'}")
    return 0
