"""English -> Chinese translation of text segments: backends, memory, placeholder protection, QA.

Imports nothing else of this project and knows nothing of images or templates; see
`protocol.py` for the contract and `backends.build_translator` for the entry point.
"""

from translators.protocol import Segment, SegmentResult, Translator, TranslatorError, Usage, Verdict

__all__ = ["Segment", "SegmentResult", "Translator", "TranslatorError", "Usage", "Verdict"]
