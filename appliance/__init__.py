"""Microscope AutoML appliance: labelled image sets in, trained and exported segmentation models out."""

__version__ = "0.1.0"
