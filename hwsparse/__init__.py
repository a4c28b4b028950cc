"""hwsparse: find sparse neural networks (lottery tickets) that fit an edge device.

The engine trains a network jointly with a relaxed mask under a concave penalty
(Fracastoro, Fosson, Migliorati, Calafiore, arXiv 2501.11135), binarizes the mask into a
ticket, rewinds the weights and retrains the ticket. See README.md for the guide.
"""

from __future__ import annotations

__version__ = "0.1.0"
