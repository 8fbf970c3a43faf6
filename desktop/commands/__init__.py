"""`earshot` subcommands that need no Qt: transcribe, models, eval."""
