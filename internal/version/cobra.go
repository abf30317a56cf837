package version

import (
	"fmt"

	"github.com/spf13/cobra"
)

// Command is the `version` subcommand of the binary named name; it also
// sets root's --version flag to print the same line.
func Command(name string, root *cobra.Command) *cobra.Command {
	line := name + " " + Get().String()
	root.Version = Get().Version
	root.SetVersionTemplate(line + "\n")
	return &cobra.Command{
		Use:     "version",
		Short:   "Print the version, git commit and Go version of this binary",
		Example: "  " + name + " version\n  " + name + " --version",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), line)
			return err
		},
	}
}
