"""Document taggers, one module per family; each registers itself by name in
lmforge.data.attributes.TAGGERS, so importing this package registers them all."""

from lmforge.data.attributes import TAGGERS
from lmforge.data.taggers import c4, gopher, lang, pii, toxic  # noqa: F401

__all__ = ["TAGGERS"]
