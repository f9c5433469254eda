"""dnnunet make-dataset"""

NAMES = ("synthetic-us2d", "synthetic-ct3d", "mni-tissue2d", "synthetic-brats2d")


def add_arguments(p):
    p.add_argument("name", choices=NAMES, help="which dataset to generate")
    p.add_argument("--id", type=int, default=None, help="dataset id (default: 501/502/503/504)")
    p.add_argument("--num-train", type=int, default=None, help="training cases (default: generator's)")
    p.add_argument("--num-test", type=int, default=None, help="test cases (default: generator's)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    p.add_argument("--labelled-fraction", type=float, default=None,
                   help="keep labels for only this share of the training cases (seeded); the rest become "
                        "unlabelled images for semi-supervised training")
    p.add_argument("--test-difficulty", choices=("varied", "uniform"), default="varied",
                   help="varied (default): each test case degraded by its own contrast/noise/artefact level, "
                        "recorded in test_difficulty.json; uniform: test cases as simulated (the test sets "
                        "made before varied difficulty existed)")
    p.add_argument("--keep-classes", nargs="+", default=None, metavar="CLASS",
                   help="keep only these foreground classes (names or label values, e.g. lesion); the others "
                        "are merged into background and the labels renumbered 1, 2, ... (binary tasks)")
    p.add_argument("--sparse-labels", type=float, default=None, metavar="FRACTION",
                   help="annotate only this share of each training label (seeded 16-voxel blocks); the rest gets "
                        "dataset.json's ignore label (sparse annotations, as nnU-Net v2 supports)")
    p.add_argument("--shape", nargs=3, type=int, default=None, metavar=("Z", "Y", "X"),
                   help="synthetic-ct3d: every case resampled to this array shape at the same spacing; large "
                        "images make the planner add nnU-Net's cascade (3d_lowres, 3d_cascade_fullres): "
                        "32 96 96 is the smallest found for the cpu-small budget")


def run(args):
    from diffusion_nnunet.datasets import make_dataset
    from dnnunet_core import paths

    folder = make_dataset(args.name, paths.raw(), args.id, args.num_train, args.num_test, args.seed, args.overwrite,
                          args.labelled_fraction, args.test_difficulty, keep_classes=args.keep_classes,
                          sparse_labels=args.sparse_labels, shape=args.shape)
    print(folder)
    return 0
