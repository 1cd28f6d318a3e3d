"""Backend `memory`: translations come only from the translation memory (offline runs, the demo).

A segment the memory lacks is a failed result with reason `memory_miss`, never an error: the
stage records it as a rejection and a later run (after an import) picks it up.
"""

from __future__ import annotations

from translators.base import MemoryFirstTranslator, Missing
from translators.protocol import SegmentResult, Verdict


class MemoryTranslator(MemoryFirstTranslator):
    async def _translate_missing(self, groups: list[list[Missing]]) -> dict[str, SegmentResult]:
        detail = (
            f"not in the translation memory for target {self.config.target_lang!r}, model {self.model!r}, "
            f"prompt {self.prompt_version!r}; import a memory file (translator.memory_import) or use backend: openai"
        )
        return {
            m.key: SegmentResult(m.segment.text, None, Verdict.failed("memory_miss", detail), "none")
            for group in groups
            for m in group
        }
