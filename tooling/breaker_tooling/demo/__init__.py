"""`breaker demo`: the ROME incident replayed on the local cluster, contained, and undone.

``replay.py`` drives it (the cluster, the operator, the node agent, the fleet, the
simulator and the agent's pod on the real node); ``story.py`` turns what the operator
recorded and what the packets showed into the lines it prints. Developer tooling: the
operator never imports it.
"""

from breaker_tooling.demo.replay import run
from breaker_tooling.demo.story import DemoError, packet_lines, timeline_lines

__all__ = ["DemoError", "packet_lines", "run", "timeline_lines"]
