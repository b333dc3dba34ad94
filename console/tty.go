package console

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// isTerminal reports whether v is a file open on a terminal: prompts and progress
// go only to an operator, never into a script's pipe or a redirected file.
func isTerminal(v any) bool {
	f, ok := v.(*os.File)
	if !ok || f == nil {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// interactive: questions can be asked, because someone types the answers.
func (s *session) interactive() bool { return isTerminal(s.stdin) }

// errNoAnswer: stdin ended while a question waited for its answer.
var errNoAnswer = errors.New("no answer (end of input)")

// lines reads the answers, sharing one buffer across questions so that a pasted
// block is not lost between them.
func (s *session) lines() *bufio.Reader {
	if s.in == nil {
		s.in = bufio.NewReader(s.stdin)
	}
	return s.in
}

// readLine reads one line without its line end.
func (s *session) readLine() (string, error) {
	line, err := s.lines().ReadString('\n')
	if err != nil && (line == "" || !errors.Is(err, io.EOF)) {
		if errors.Is(err, io.EOF) {
			return "", errNoAnswer
		}
		return "", err
	}
	return strings.TrimRight(line, "\r\n"), nil
}

// ask prints a question with its default and returns the answer, or the default
// for an empty line.
func (s *session) ask(question, def string) (string, error) {
	if def != "" {
		fmt.Fprintf(s.stdout, "%s [%s]: ", question, def)
	} else {
		fmt.Fprintf(s.stdout, "%s: ", question)
	}
	answer, err := s.readLine()
	if err != nil {
		return "", err
	}
	if answer = strings.TrimSpace(answer); answer == "" {
		return def, nil
	}
	return answer, nil
}

// askPEM takes a path or a pasted PEM block: a first line starting with -----BEGIN
// is read on up to the END line of the last block, ended by an empty line.
func (s *session) askPEM(question string) (text, from string, err error) {
	first, err := s.ask(question, "")
	if err != nil || first == "" {
		return "", "", err
	}
	if !strings.HasPrefix(first, "-----BEGIN ") {
		data, err := os.ReadFile(first)
		if err != nil {
			return "", "", fmt.Errorf("%w: %v", errBadAnswer, err)
		}
		if !strings.Contains(string(data), "-----BEGIN ") {
			return "", "", fmt.Errorf("%w: %s holds no PEM block", errBadAnswer, first)
		}
		if err := checkBlocks(first, data, pemTypes["certificate"]); err != nil {
			return "", "", fmt.Errorf("%w: %v", errBadAnswer, err)
		}
		return string(data), first, nil
	}
	var b strings.Builder
	b.WriteString(first + "\n")
	for {
		line, err := s.readLine()
		if err != nil {
			return "", "", err
		}
		if strings.TrimSpace(line) == "" && strings.Contains(b.String(), "-----END ") {
			if err := checkBlocks("the pasted text", []byte(b.String()), pemTypes["certificate"]); err != nil {
				return "", "", fmt.Errorf("%w: %v", errBadAnswer, err)
			}
			return b.String(), "pasted", nil
		}
		b.WriteString(line + "\n")
	}
}

// errBadAnswer: an answer that cannot be used; the question is asked again.
var errBadAnswer = errors.New("unusable answer")

// progress shows that long work goes on, on a terminal only, until stop is called.
func (s *session) progress(what string) (stop func()) {
	if !isTerminal(s.stderr) || s.opts.json {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		start := time.Now()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			fmt.Fprintf(s.stderr, "\r%s ... %ds", what, int(time.Since(start).Seconds()))
			select {
			case <-done:
				fmt.Fprintf(s.stderr, "\r%s ... done in %s\n", what, time.Since(start).Round(100*time.Millisecond))
				return
			case <-tick.C:
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(done)
			wg.Wait()
		})
	}
}
