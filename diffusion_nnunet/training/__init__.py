"""Trainers (nnunetv2 subclasses), their typed config and the registry that names them."""
