"""``python -m hybrid_sae_ext VERB [flags]``: the same command line as ``hybrid-sae`` (see ``hybrid_sae_ext.cli``)."""

from hybrid_sae_ext.cli import main

main()
