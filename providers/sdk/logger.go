package sdk

import (
	"io"
	"log/slog"
	"strings"
)

// NewLogger returns a logger for a provider binary that writes JSON lines in
// the shape go-plugin's host parses (@level, @message, @timestamp), so the
// agent re-logs them at their own level with the provider's name. Build it in
// main before calling Serve, with os.Stderr: Serve redirects os.Stderr
// afterwards, but the logger keeps the original file.
func NewLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{
		Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) > 0 {
				return a
			}
			switch a.Key {
			case slog.TimeKey:
				a.Key = "@timestamp"
			case slog.MessageKey:
				a.Key = "@message"
			case slog.LevelKey:
				a.Key = "@level"
				if lv, ok := a.Value.Any().(slog.Level); ok {
					a.Value = slog.StringValue(hclogLevel(lv))
				}
			}
			return a
		},
	}))
}

// hclogLevel maps an slog level to the level names hclog parses.
func hclogLevel(lv slog.Level) string {
	switch {
	case lv < slog.LevelDebug:
		return "trace"
	case lv < slog.LevelInfo:
		return "debug"
	case lv < slog.LevelWarn:
		return "info"
	case lv < slog.LevelError:
		return "warn"
	default:
		return strings.ToLower(slog.LevelError.String())
	}
}
