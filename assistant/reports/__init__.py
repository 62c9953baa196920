"""Reports: from a conversation's findings to a checked, versioned, signed, translated, exported report.

    collect.py   findings of the session's tool calls, the scan's fingerprint (refuses other scans)
    terms.py     finding terms -> term-index concepts, one wording and codes per concept
    draft.py     templates per modality/region (prompts/reports/), the LLM's grounded impression
    checks.py    ungrounded numbers, inconsistent synonyms, unmapped terms, ambiguous abbreviations
    store.py     SQLite versions, sign-off, remembered wordings
    translate.py the report in another language through the terminology-aware translator
    export.py    Markdown and the export gate; pdf.py, fhir.py (R4B), dicom_sr.py (TID 1500)
    cli.py       `scanchat report`
"""
