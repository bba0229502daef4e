"""`make demo` (placeholder until the training engine lands): list the zoo."""

from imgcls.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["models"]))
