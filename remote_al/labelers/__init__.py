"""Labelers: one contract, three implementations (``chgnet``, ``gpaw``, ``vasp``)."""

from remote_al.labelers.base import LABELERS, Labeler, LabelingError, get_labeler, validate_label

__all__ = ["Labeler", "LabelingError", "LABELERS", "get_labeler", "validate_label"]
