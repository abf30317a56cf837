package agent

// apiError is the body of the API's error answers.
type apiError struct {
	Error string `json:"error"`
}
