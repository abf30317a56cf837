package agentcmd

import (
	"os"
	"runtime/debug"
)

// agentGCPercent is the agent's GOGC unless the environment sets one: its
// live heap is small (about 3 MiB at 500 domains) and each scrape is mostly
// garbage, so collecting at 1.5× the live heap instead of 2× keeps about
// 2 MiB less resident for a few milliseconds of CPU per scrape.
const agentGCPercent = 50

// tuneMemory sets the agent's GOGC unless the environment sets one.
func tuneMemory() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(agentGCPercent)
	}
}
