module github.com/snare-dev/snare

go 1.26.8
