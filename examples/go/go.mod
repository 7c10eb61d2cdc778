module tunjumbo

go 1.19
