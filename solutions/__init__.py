"""The course's phases, one package each (solutions/ holds the answers, exercises/ the stubs)."""
