"""The command line's layer below ``cli.py``: one typed, torch-free options class per command.

- :mod:`~histodrl.commands.options`: the options model (declaring, converting, checking, argparse
  and YAML generated from one declaration).
- :mod:`~histodrl.commands.common`: option groups several commands share (run, encoder, labels).
- :mod:`~histodrl.commands.pretrain`, :mod:`~histodrl.commands.segment`,
  :mod:`~histodrl.commands.classify` (classify and probe): each command's options.
"""
