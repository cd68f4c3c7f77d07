"""The model side: an architecture-neutral view of a decoder (``structure``), the adapter base
for Hugging Face models (``hf_adapter``), masked forwards (``masking``), the unit kinds
(``granularity``), physical surgery and saving (``surgery``, ``pruned_modeling``) and the
counting of removed parameters (``accounting``).
"""
