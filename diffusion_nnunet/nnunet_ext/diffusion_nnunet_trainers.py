"""Makes this project's trainers visible to stock nnunetv2 tools (nnUNetv2_predict, ...).

nnunetv2 finds trainer classes by name in the folders listed in `nnUNet_extTrainer`, importing
each module there as a top-level module. Point it at this folder:

    export nnUNet_extTrainer=$(dnnunet ext-trainer-path)

Only this shim lives here; the classes are defined (and registered) in `diffusion_nnunet.training`.
"""
from diffusion_nnunet.configs import trainer_registry as _registry

for _entry in _registry.available().values():
    globals()[_entry.cls.__name__] = _entry.cls
