"""Frontend halves of the shipped split drivers (installed as ``ringkit.frontends``)."""

__all__ = ()
