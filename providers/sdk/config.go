package sdk

import (
	"bytes"
	"encoding/json"
	"fmt"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"google.golang.org/protobuf/encoding/protojson"
)

// DecodeConfig decodes a ConfigureRequest's configuration (config or
// config_json, not both) into dst strictly: unknown keys are refused. Errors
// are InvalidArgument naming "config".
func DecodeConfig(req *providerv1.ConfigureRequest, dst any) error {
	var raw []byte
	switch {
	case req.GetConfig() != nil && len(req.GetConfigJson()) > 0:
		return InvalidArgument("config", "set config or config_json, not both")
	case req.GetConfig() != nil:
		b, err := protojson.Marshal(req.GetConfig())
		if err != nil {
			return InvalidArgument("config", "%v", err)
		}
		raw = b
	case len(req.GetConfigJson()) > 0:
		raw = req.GetConfigJson()
	default:
		raw = []byte("{}")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return InvalidArgument("config", "%v", err)
	}
	if dec.More() {
		return InvalidArgument("config", "trailing data after the JSON object")
	}
	return nil
}

// ConfigJSON marshals v as a ConfigureRequest.config_json, for hosts and tests.
func ConfigJSON(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("provider config: %w", err)
	}
	return b, nil
}
