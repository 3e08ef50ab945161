package plan

import (
	"slices"
	"sort"
)

// OutputVerification is the step output by which a provider states the
// result of a check that proves the step's effect (e.g. "0 rows of tenant
// acme remain"). The agent records it in its audit log, the control plane in
// the plan's audit record, and `attache plan show` lists it first.
const OutputVerification = "verification"

// OutputKeys returns a step's output keys in the order they are kept and
// shown: the verification first, then the others sorted. Bounds that keep
// only the first outputs therefore never drop the verification.
func OutputKeys[V any](outputs map[string]V) []string {
	keys := make([]string, 0, len(outputs))
	for k := range outputs {
		if k != OutputVerification {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	if _, ok := outputs[OutputVerification]; ok {
		keys = slices.Insert(keys, 0, OutputVerification)
	}
	return keys
}
