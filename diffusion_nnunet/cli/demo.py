"""dnnunet demo"""


def add_arguments(p):
    from diffusion_nnunet.cli.common import add_device_argument

    p.add_argument("--dataset", default="synthetic-us2d", help="generator to use (default synthetic-us2d)")
    p.add_argument("--output", default="demo_output", help="where the table and pictures go")
    p.add_argument("--budget", default=None, help="compute budget (default: cpu-small on CPU, gpu on CUDA)")
    p.add_argument("--num-train", type=int, default=None, help="training cases to generate")
    p.add_argument("--num-test", type=int, default=None, help="test cases to generate")
    p.add_argument("--epochs", type=int, default=None, help="override the planned number of epochs")
    p.add_argument("--fresh", action="store_true", help="regenerate the dataset and retrain from scratch")
    add_device_argument(p)


def run(args):
    from diffusion_nnunet.demo import DemoSettings, run_demo
    from diffusion_nnunet.utils.device import resolve_device

    run_demo(DemoSettings(dataset=args.dataset, output=args.output, budget=args.budget, num_train=args.num_train,
                          num_test=args.num_test, epochs=args.epochs, fresh=args.fresh),
             resolve_device(args.device))
    return 0
