"""The four stage programs; each reads earlier stages' folders and writes its own: run(cfg, reporter)."""
