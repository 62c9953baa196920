"""The shared medical term index: free text -> concept (id, preferred term, synonyms, codes, labels)."""
