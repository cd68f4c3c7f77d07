"""Built-in granularities ``channel``, ``head`` and ``layer`` (see :mod:`pgprune_core.granularity`)."""

from __future__ import annotations

from ..granularity.channel import ChannelGranularity
from ..granularity.head import HeadGranularity
from ..granularity.layer import LayerGranularity
from ..plugins import hookimpl


@hookimpl
def pgprune_register_granularities(register):  # type: ignore[no-untyped-def]
    register(ChannelGranularity)
    register(HeadGranularity)
    register(LayerGranularity)
