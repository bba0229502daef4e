"""Parameters and multiply-adds per top-level module (placeholder until the zoo issue fills it in)."""


def profile(model, input_size=(3, 224, 224)):
    raise NotImplementedError
