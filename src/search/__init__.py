"""Search a design space by training: Optuna studies over a factory's keyword arguments (`study`, `space`) and over
the decoder space of `archsmith design` (`decoder`)."""

from archsmith.search.space import Space, read_space
from archsmith.search.study import search

__all__ = ["Space", "read_space", "search"]
