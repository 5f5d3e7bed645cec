"""``python -m chio_kernel.cli``: the ``chio-durable`` command."""

from chio_kernel.cli import main

main()
