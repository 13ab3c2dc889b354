"""Backend halves of the shipped split drivers (installed as ``ringkit.backends``)."""

__all__ = ()
