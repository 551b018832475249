"""The terminology service's read side (R4 terminology-service.html): a store of the CodeSystems, ValueSets and
ConceptMaps users stored (:mod:`.store`, a view followed from the log) over the spec's own, and the logic of
the operations over either (:mod:`.engine`)."""
