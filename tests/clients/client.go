// Go (net/http): a compatible call and a compatible stream, through BASE_URL.
package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
)

func post(body string) *http.Response {
	req, err := http.NewRequest("POST", os.Getenv("BASE_URL")+"/compatible-mode/v1/chat/completions", strings.NewReader(body))
	if err != nil {
		panic(err)
	}
	req.Header.Set("Authorization", "Bearer "+os.Getenv("DASHSCOPE_API_KEY"))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Costsplit-Scenario", "go-app")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		panic(err)
	}
	return resp
}

func main() {
	messages := `"messages":[{"role":"user","content":"Say hello from Go."}]`
	resp := post(`{"model":"qwen-plus",` + messages + `}`)
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Println(resp.StatusCode)
	fmt.Println(string(data))
	resp = post(`{"model":"qwen-plus","stream":true,` + messages + `}`)
	fmt.Println(resp.StatusCode)
	lines := bufio.NewScanner(resp.Body)
	for lines.Scan() {
		fmt.Println(lines.Text())
	}
	resp.Body.Close()
}
