# Reads `go test -v` output: prints each package's result line and the whole
# output of every failed test as it comes, then how many tests passed, failed
# and were skipped, with each skip's reason. Used by `make test`.

# The test whose output follows: go test -v names it on === lines.
/^=== (RUN|CONT|NAME|PAUSE) / { cur = $3; next }

/^ *--- (PASS|FAIL|SKIP): / {
	result = $2; sub(":", "", result); name = $3
	count[result]++
	if (result == "FAIL") {
		print
		printf "%s", buf[name]
	} else if (result == "SKIP") {
		reason = buf[name]; gsub(/\n/, " ", reason); gsub(/  +/, " ", reason)
		skips[++nskips] = name ":" reason
	}
	delete buf[name]
	next
}

# Package results and build or vet errors.
/^(ok|FAIL|panic:|# )/ || /^[^ \t]+\.go:[0-9]+:/ { print; if ($0 ~ /^panic:/) inpanic = 1; next }
/^(PASS|\?) / || /^PASS$/ { next }

{
	if (inpanic) print
	else if (cur != "") buf[cur] = buf[cur] $0 "\n"
}

END {
	if (nskips) {
		print ""
		print "skipped:"
		for (i = 1; i <= nskips; i++) print "  " skips[i]
	}
	print ""
	printf "tests: %d passed, %d failed, %d skipped\n", count["PASS"], count["FAIL"], count["SKIP"]
}
