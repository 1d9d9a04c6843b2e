"""Lambda entry points. Thin: parse input and config, call the core, log and emit metrics."""
