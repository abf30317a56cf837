package labbmc

// LabProfileID and LabGroupID name what LabProfile defines.
const (
	LabProfileID = "lab-report"
	LabGroupID   = "lab"
)

// LabProfile returns the PXE configuration file (provisioner.pxe.config_file,
// provisioner/pxe's profiles and groups) the lab writes: one group for
// every host, whose profile is the smallest a provisioning attempt
// completes with. Its iPXE script only reports the boot, with a GET of
// the attempt's callback URL (as provisioner/pxe's end-to-end boot does:
// iPXE builds without the params command cannot POST); the host then
// counts as installed, and the lab's "installer" does the rest.
func LabProfile() string {
	return `# caretaker lab: what a simulated host boots over PXE. Its firmware
# (internal/labbmc.Firmware) runs this script; the lab's installer does
# the rest.
profiles:
  - id: ` + LabProfileID + `
    script: |
      echo caretaker lab: reporting the boot
      imgfetch {{ .CallbackURL }}
groups:
  - id: ` + LabGroupID + `
    profile: ` + LabProfileID + `
`
}
