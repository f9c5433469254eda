"""`dnnunet train` argument handling that needs no dataset."""
from __future__ import annotations

import pytest

from diffusion_nnunet.cli.main import build_parser
from diffusion_nnunet.cli.train import parse_semi_options
from dnnunet_core.errors import UserInputError


def test_semi_options_are_read_as_json_with_strings_as_fallback():
    assert parse_semi_options(["copy_paste=0", "chain_rounds=false", " pseudo_threshold =0.9", "x=abc"]) == {
        "copy_paste": 0, "chain_rounds": False, "pseudo_threshold": 0.9, "x": "abc"}
    assert parse_semi_options([]) == {}


@pytest.mark.parametrize("item, message", [("copy_paste", "KEY=VALUE"), ("=1", "KEY=VALUE"),
                                           ("rounds=3", "use --rounds"), ("teacher=a", "use --teacher"),
                                           ("rec_start_step=null", "null")])
def test_malformed_semi_options_are_refused(item, message):
    with pytest.raises(UserInputError, match=message):
        parse_semi_options([item])


def test_semi_option_flag_is_repeatable():
    args = build_parser().parse_args(["train", "-d", "1", "-f", "0", "--semi-option", "copy_paste=0",
                                      "--semi-option", "ce_weight=0"])
    assert parse_semi_options(args.semi_option) == {"copy_paste": 0, "ce_weight": 0}
